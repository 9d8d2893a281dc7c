-- The `copas` module name for Copas programs running on weft: the same
-- module as weft.copas (installed unless ./configure --disable-copas-alias).
return require "weft.copas"
