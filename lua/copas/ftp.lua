-- Copas's ftp submodule, for programs that require it by name.
return require("copas").ftp
