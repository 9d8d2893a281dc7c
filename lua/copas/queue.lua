-- Copas's queue submodule, for programs that require it by name.
return require("copas").queue
