-- Copas's lock submodule, for programs that require it by name.
return require("copas").lock
