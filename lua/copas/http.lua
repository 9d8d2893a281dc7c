-- Copas's http submodule, for programs that require it by name.
return require("copas").http
