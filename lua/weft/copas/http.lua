-- copas.http: an HTTP/1.1 client for Copas threads, with LuaSocket's
-- http.request interface (string and table forms, LTN12 sources and
-- sinks), redirects across http and https, chunked bodies, and https
-- through weft.tls with certificate and host name checks by default.
local M = {}

function M.bind(copas)
	local http = {}
	http.TIMEOUT = 60
	http.USERAGENT = "weft.copas " .. copas._VERSION
	http.PORT = 80
	http.SSLPORT = 443

	local function parse_url(url)
		if type(url) ~= "string" then return nil, "invalid url" end
		local scheme, rest = url:match("^(%a[%w+.-]*)://(.*)$")
		if not scheme then return nil, "invalid url: " .. url end
		scheme = scheme:lower()
		local authority, path = rest:match("^([^/?#]*)(.*)$")
		path = path:gsub("#.*$", "")
		if path == "" then path = "/" end
		if path:sub(1, 1) == "?" then path = "/" .. path end
		local userinfo, hostport = authority:match("^(.*)@(.*)$")
		hostport = hostport or authority
		local host, port = hostport:match("^%[(.-)%]:?(%d*)$")
		if not host then
			host, port = hostport:match("^([^:]*):?(%d*)$")
		end
		if not host or host == "" then return nil, "invalid url: no host" end
		port = tonumber(port)
		return {scheme = scheme, host = host, port = port, path = path, userinfo = userinfo,
			authority = authority}
	end

	-- A relative location against the base url.
	local function absolute(base, loc)
		if loc:match("^%a[%w+.-]*://") then return loc end
		local b = parse_url(base)
		local root = b.scheme .. "://" .. b.authority
		if loc:sub(1, 2) == "//" then return b.scheme .. ":" .. loc end
		if loc:sub(1, 1) == "/" then return root .. loc end
		local dir = b.path:gsub("%?.*$", ""):match("^(.*/)") or "/"
		-- drop "." and ".." segments (RFC 3986, 5.2.4)
		local out = {}
		local path, query = (dir .. loc):match("^([^?]*)(.*)$")
		for seg in (path .. "/"):gmatch("([^/]*)/") do
			if seg == ".." then
				if #out > 1 then out[#out] = nil end
			elseif seg ~= "." then
				out[#out + 1] = seg
			end
		end
		local last = path:match("[^/]*$")
		if last == "." or last == ".." then out[#out + 1] = "" end
		return root .. table.concat(out, "/") .. query
	end

	local function timeouts(t)
		if type(t) == "table" then
			return t.connect or 30, t.send or 30, t.receive or 30
		end
		t = t or http.TIMEOUT
		return t, t, t
	end

	local function default_sslparams(host)
		-- the peer's certificate is checked against the system's CAs, and
		-- its name against the host (weft.tls does both for servername)
		return {
			mode = "client",
			protocol = "any",
			verify = "peer",
			servername = host,
		}
	end

	-- The create function for a request: a Copas-wrapped TCP socket,
	-- with TLS when the scheme is https.
	function http.getcreatefunc(params)
		params = params or {}
		local tcp = params.create or copas.socket.tcp
		return function(reqt)
			local u = reqt or params
			local skt = copas.wrap(tcp(u))
			local sslt
			if (u.scheme or params.scheme) == "https" then
				sslt = u.sslparams or params.sslparams
				if not sslt then
					sslt = default_sslparams(u.host or params.host)
					if u.verify or params.verify then sslt.verify = u.verify or params.verify end
					if u.protocol or params.protocol then sslt.protocol = u.protocol or params.protocol end
					if u.options or params.options then sslt.options = u.options or params.options end
				elseif sslt.servername == nil and sslt.mode then
					local c = {}
					for k, v in pairs(sslt) do c[k] = v end
					c.servername = u.host
					sslt = c
				end
				skt = copas.wrap(skt.socket, sslt)
			end
			return skt
		end
	end

	local function default_step(src, snk)
		local chunk, err = src()
		local ret, serr = snk(chunk, err)
		if chunk and ret then return 1 end
		return nil, err or serr
	end

	local function pump_all(src, snk, step)
		step = step or default_step
		while true do
			local ret, err = step(src, snk)
			if not ret then
				if err then return nil, err end
				return 1
			end
		end
	end

	local function send_headers(skt, reqt, u)
		local lines = {}
		local path = reqt.proxy and reqt.url or u.path
		lines[1] = ("%s %s HTTP/1.1\r\n"):format(reqt.method, path)
		local h = {}
		local given = {}
		for k, v in pairs(reqt.headers or {}) do given[k:lower()] = true end
		if not given["host"] then
			local hp = u.host:find(":", 1, true) and "[" .. u.host .. "]" or u.host
			local default = u.scheme == "https" and 443 or 80
			if u.port and u.port ~= default then hp = hp .. ":" .. u.port end
			h[#h + 1] = "host: " .. hp
		end
		if not given["user-agent"] then h[#h + 1] = "user-agent: " .. http.USERAGENT end
		if not given["connection"] then h[#h + 1] = "connection: close, TE" end
		if not given["te"] then h[#h + 1] = "te: trailers" end
		for k, v in pairs(reqt.headers or {}) do h[#h + 1] = k .. ": " .. tostring(v) end
		if reqt.source and not given["content-length"] and not given["transfer-encoding"] then
			h[#h + 1] = "transfer-encoding: chunked"
			reqt.chunked = true
		end
		lines[2] = table.concat(h, "\r\n") .. "\r\n\r\n"
		local ok, err = skt:send(table.concat(lines))
		if not ok then return nil, err end
		if reqt.source then
			local sink
			if reqt.chunked then
				sink = function(chunk)
					if chunk == nil then return skt:send("0\r\n\r\n") end
					if #chunk == 0 then return 1 end
					return skt:send(("%x\r\n%s\r\n"):format(#chunk, chunk))
				end
			else
				sink = function(chunk)
					if chunk == nil then return 1 end
					return skt:send(chunk)
				end
			end
			local r, e = pump_all(reqt.source, sink, reqt.step)
			if not r then return nil, e end
		end
		return 1
	end

	local function read_headers(skt)
		local headers = {}
		local name
		while true do
			local line, err = skt:receive("*l")
			if not line then return nil, err end
			if line == "" then break end
			local n, v = line:match("^([^:%s]+)%s*:%s*(.*)$")
			if n then
				name = n:lower()
				if headers[name] then
					headers[name] = headers[name] .. ", " .. v
				else
					headers[name] = v
				end
			elseif name and line:match("^%s") then
				headers[name] = headers[name] .. " " .. line:match("^%s*(.-)%s*$")
			else
				return nil, "malformed reponse headers"
			end
		end
		return headers
	end

	-- A source over the response body.
	local function body_source(skt, headers)
		local te = headers["transfer-encoding"]
		if te and te:lower() ~= "identity" then
			local done = false
			return function()
				if done then return nil end
				local line, err = skt:receive("*l")
				if not line then return nil, err end
				local size = tonumber(line:match("^%s*(%x+)"), 16)
				if not size then return nil, "invalid chunk size" end
				if size == 0 then
					done = true
					-- trailers
					repeat
						line, err = skt:receive("*l")
						if not line then return nil, err end
					until line == ""
					return nil
				end
				local chunk, e = skt:receive(size)
				if not chunk then return nil, e end
				local crlf, e2 = skt:receive("*l")
				if not crlf then return nil, e2 end
				return chunk
			end
		end
		local length = tonumber(headers["content-length"])
		if length then
			local left = length
			return function()
				if left <= 0 then return nil end
				local n = left > 8192 and 8192 or left
				local chunk, err, part = skt:receive(n)
				if not chunk then
					if part and #part > 0 then left = 0 return part end
					return nil, err
				end
				left = left - #chunk
				return chunk
			end
		end
		local done = false
		return function()
			if done then return nil end
			local chunk, err, part = skt:receivepartial("*a")
			if chunk then done = true return chunk ~= "" and chunk or nil end
			if err == "closed" then
				done = true
				return part ~= "" and part or nil
			end
			if err == "timeout" and part and #part > 0 then return part end
			return nil, err
		end
	end

	local function should_redirect(reqt, code, headers)
		return headers.location and reqt.redirect ~= false
			and (code == 301 or code == 302 or code == 303 or code == 307 or code == 308)
			and (reqt.method == "GET" or reqt.method == "HEAD" or code == 303)
	end

	local function trequest(reqt, nredirects)
		local u, err = parse_url(reqt.url)
		if not u then return nil, err end
		if u.scheme ~= "http" and u.scheme ~= "https" then
			return nil, "unsupported scheme '" .. u.scheme .. "'"
		end
		reqt.method = reqt.method or "GET"
		u.port = u.port or (u.scheme == "https" and 443 or 80)
		local chost, cport = u.host, u.port
		if reqt.proxy then
			local p = parse_url(reqt.proxy)
			if not p then return nil, "invalid proxy url" end
			chost, cport = p.host, p.port or 3128
		end
		local create = reqt.create and http.getcreatefunc({create = reqt.create})
			or http.getcreatefunc()
		local info = {scheme = u.scheme, host = u.host, port = u.port, sslparams = reqt.sslparams,
			verify = reqt.verify, protocol = reqt.protocol, options = reqt.options}
		local ok, skt = pcall(create, info)
		if not ok then return nil, skt end
		local cto, sto, rto = timeouts(reqt.timeout)
		skt:settimeouts(cto, sto, rto)
		local r, e
		ok, r, e = pcall(skt.connect, skt, chost, cport)
		if not ok then skt:close() return nil, r end
		if not r then skt:close() return nil, e end
		r, e = send_headers(skt, reqt, u)
		if not r then skt:close() return nil, e end
		local status, code
		repeat
			status, e = skt:receive("*l")
			if not status then skt:close() return nil, e end
			code = tonumber(status:match("^HTTP/%d*%.?%d*%s+(%d%d%d)"))
			if not code then skt:close() return nil, "invalid status line: " .. status end
			local headers0 = code == 100 and read_headers(skt)
		until code ~= 100
		local headers, he = read_headers(skt)
		if not headers then skt:close() return nil, he end
		if should_redirect(reqt, code, headers) then
			local max = reqt.maxredirects
			if max == nil then max = 5 end
			if max ~= false and nredirects >= max then
				skt:close()
				return nil, "too many redirects"
			end
			local loc = absolute(reqt.url, headers.location)
			local nu = parse_url(loc)
			if not nu then skt:close() return nil, "invalid redirect location" end
			if u.scheme == "https" and nu.scheme == "http" and reqt.redirect ~= "all" then
				skt:close()
				return nil, "Unallowed insecure redirect https to http"
			end
			skt:close()
			local nreqt = {}
			for k, v in pairs(reqt) do nreqt[k] = v end
			nreqt.url = loc
			if code == 303 and reqt.method ~= "HEAD" then
				nreqt.method = "GET"
				nreqt.source = nil
			end
			nreqt.headers = {}
			for k, v in pairs(reqt.headers or {}) do
				if k:lower() ~= "host" then nreqt.headers[k] = v end
			end
			local r1, c1, h1, s1 = trequest(nreqt, nredirects + 1)
			if r1 and h1 then h1.location = h1.location or loc end
			return r1, c1, h1, s1
		end
		local sink = reqt.sink
		if reqt.method ~= "HEAD" and code ~= 204 and code ~= 304 and not (code >= 100 and code < 200) then
			local src = body_source(skt, headers)
			if sink then
				r, e = pump_all(src, sink, reqt.step)
				if not r then skt:close() return nil, e end
			end
		elseif sink then
			sink(nil)
		end
		skt:close()
		return 1, code, headers, status
	end

	function http.request(reqt, body)
		if type(reqt) == "string" then
			local t = {}
			local r = {
				url = reqt,
				sink = function(chunk)
					if chunk then t[#t + 1] = chunk end
					return 1
				end,
			}
			if body then
				body = tostring(body)
				local sent = false
				r.method = "POST"
				r.source = function()
					if sent then return nil end
					sent = true
					return body
				end
				r.headers = {["content-length"] = #body,
					["content-type"] = "application/x-www-form-urlencoded"}
			end
			local ok, code, headers, status = trequest(r, 0)
			if not ok then return nil, code end
			return table.concat(t), code, headers, status
		end
		if type(reqt) ~= "table" then
			error("bad argument #1 to 'request' (string or table expected)", 2)
		end
		local r = {}
		for k, v in pairs(reqt) do r[k] = v end
		return trequest(r, 0)
	end

	http.parse_url = parse_url
	return http
end

return M
