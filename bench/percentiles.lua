-- wrk -s bench/percentiles.lua: print latency percentiles (ms), p95 included,
-- which wrk's own --latency table lacks.
done = function(summary, latency, requests)
  for _, p in ipairs({50, 90, 95, 99}) do
    io.write(string.format("PCT %d %.2f\n", p, latency:percentile(p) / 1000))
  end
end
