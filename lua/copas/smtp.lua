-- Copas's smtp submodule, for programs that require it by name.
return require("copas").smtp
