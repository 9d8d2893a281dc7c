-- weft.tls: TLS on weft TCP sockets (OpenSSL 3, in src/ltls.c).  This file
-- adds the parts that read best in Lua: parameter tables remembered per
-- table, the Copas `sslparams` form, SNI tables of parameters, the host
-- name a client connected to, and the TCP methods a TLS socket passes
-- through.  The reference is doc/api.md.
local weft = require "weft"
local core = weft.core

local getmetatable, setmetatable, type, pairs = getmetatable, setmetatable, type, pairs

local tls = {}

local CTX = core.tls_context_methods
local T = core.tls_methods

local function isctx(v)
	return type(v) == "userdata" and core.tls_isctx(v)
end

-- A parameter table is read (files included) once per Lua state; its
-- context is remembered for as long as the table lives.  Changing a table
-- after its first use does not change its context: make a new table.
local known = setmetatable({}, {__mode = "k"})

function tls.context(params)
	if isctx(params) then return params end
	if type(params) ~= "table" then
		error("bad argument #1 to 'context' (table expected, got " .. type(params) .. ")", 2)
	end
	local ctx = known[params]
	if ctx then return ctx end
	local err
	ctx, err = core.tls_context(params)
	if not ctx then return nil, err end
	known[params] = ctx
	return ctx
end

-- ctx:sni({ [name] = ctx_or_params, ... }, [strict]): a server picks the
-- context for the name the client asks for; with strict, an unknown name
-- ends the handshake (alert unrecognized_name).
function CTX:sni(names, strict)
	if type(names) ~= "table" then
		error("bad argument #1 to 'sni' (table expected, got " .. type(names) .. ")", 2)
	end
	local ctxs = {}
	for name, p in pairs(names) do
		if type(name) ~= "string" then return nil, "sni: names must be strings" end
		local c, err = tls.context(p)
		if not c then return nil, "sni '" .. name .. "': " .. err end
		if c:mode() ~= "server" then return nil, "sni '" .. name .. "': not a server context" end
		ctxs[name] = c
	end
	if self:mode() ~= "server" then return nil, "sni: not a server context" end
	return self:_sni(ctxs, strict)
end

-- tls.wrap(tcp, ctx_or_params, [servername]) -> tls | nil, err
-- Also takes Copas's form { wrap = ctx_or_params, sni = { names = ..., strict = ... } },
-- where names is the server name (clients) or a table of names (servers).
function tls.wrap(sock, p, servername)
	if type(p) ~= "table" and not isctx(p) then
		error("bad argument #2 to 'wrap' (table or context expected, got " .. type(p) .. ")", 2)
	end
	local sni
	if type(p) == "table" and p.wrap ~= nil then
		sni = p.sni
		p = p.wrap
	end
	local ctx, err = tls.context(p)
	if not ctx then return nil, err end
	if type(sni) == "table" then
		if type(sni.names) == "string" then
			servername = servername or sni.names
		elseif type(sni.names) == "table" and ctx:mode() == "server" then
			-- One context object per sslparams table, so its SNI table is
			-- set once, not per connection.
			if not known[sni] then
				local c = ctx
				if not isctx(p) then c = core.tls_context(p) end
				local ok, e = c:sni(sni.names, sni.strict)
				if not ok then return nil, e end
				known[sni] = c
			end
			ctx = known[sni]
		end
	end
	if ctx:mode() == "client" then
		if servername == nil and type(p) == "table" then servername = p.servername end
		if servername == nil then servername = weft._connhost(sock) end
		if servername == nil then
			-- Connected by address: check the certificate against it.
			servername = sock.remote_addr
		end
	else
		servername = nil
	end
	return core.tls_wrap(sock, ctx, servername)
end

-- tls.contexts() -> how many SSL contexts are alive in the process (all
-- workers): equal parameters share one.
tls.contexts = core.tls_contexts

-- tls.connect(host, port, ctx_or_params, [expires]) -> tls | nil, err:
-- a TCP connection, wrapped and handshaken.
function tls.connect(host, port, p, expires)
	local s, err = weft.tcp()
	if not s then return nil, err end
	local ok
	ok, err = s:connect(host, port, expires)
	if not ok then s:close(); return nil, err end
	local t
	t, err = tls.wrap(s, p)
	if not t then s:close(); return nil, err end
	ok, err = t:handshake(expires)
	if not ok then t:close(); return nil, err end
	return t
end

-- What a TLS socket passes through to its TCP socket.
for _, name in pairs { "setopt", "getopt", "fileno", "family", "protocol", "bound" } do
	T[name] = function(self, ...)
		local s = self:tcp()
		return s[name](s, ...)
	end
end

function T:type() return "tls" end

function T:shutdown(how)
	how = how or "rw"
	if how == "w" or how == "rw" then self:_close_notify() end
	return self:tcp():shutdown(how)
end

T.recvall_read = core.socket_methods.recvall_read

return tls
