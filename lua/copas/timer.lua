-- Copas's timer submodule, for programs that require it by name.
return require("copas").timer
