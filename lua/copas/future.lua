-- Copas's future submodule, for programs that require it by name.
return require("copas").future
