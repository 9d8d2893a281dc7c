-- A wrk script: every request wrk makes is DEPTH pipelined GET / requests
-- sent in one write (wrk -s pipeline.lua URL -- DEPTH; default 16).  wrk
-- counts each response, so its request count and rate are per HTTP request.
init = function(args)
	local depth = tonumber(args[1]) or 16
	local r = {}
	for i = 1, depth do
		r[i] = wrk.format(nil, "/")
	end
	req = table.concat(r)
end

request = function()
	return req
end
