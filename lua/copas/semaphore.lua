-- Copas's semaphore submodule, for programs that require it by name.
return require("copas").semaphore
