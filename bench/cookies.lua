-- wrk -s bench/cookies.lua URL -- FILE: each request as another user, a
-- Cookie header drawn in turn from FILE (one per line); prints latency
-- percentiles (ms) as bench/percentiles.lua does.
local cookies = {}
local next_cookie = 1

init = function(args)
  for line in io.lines(args[1]) do
    if line ~= "" then table.insert(cookies, line) end
  end
  next_cookie = math.random(#cookies)
end

request = function()
  local cookie = cookies[next_cookie]
  next_cookie = next_cookie % #cookies + 1
  return wrk.format(nil, nil, {["Cookie"] = cookie})
end

done = function(summary, latency, requests)
  for _, p in ipairs({50, 90, 95, 99}) do
    io.write(string.format("PCT %d %.2f\n", p, latency:percentile(p) / 1000))
  end
end
