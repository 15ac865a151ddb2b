-- A mixed read/write workload for `cargo bench --bench load`: of every 20 requests, 2 write a
-- memory, 10 search, 4 query by keyword, 2 count, 1 lists spaces and 1 reads the usage summary.
-- The API key comes from MEMESH_KEY.
local key = os.getenv("MEMESH_KEY")
local json = { ["Content-Type"] = "application/json", ["x-api-key"] = key }
local plain = { ["x-api-key"] = key }
local topics = { "harbour", "database migration", "deploy failed", "retry budget", "ships at dawn",
                 "データベースの移行", "quarterly report", "incident handoff", "rate limits", "backup" }
local n = 0
-- MEMESH_READ_ONLY=1: the same mix with the writes turned into searches.
local read_only = os.getenv("MEMESH_READ_ONLY") == "1"

local function enc(s)
  return (s:gsub("[^%w%-_%.~]", function(c) return string.format("%%%02X", string.byte(c)) end))
end

request = function()
  n = n + 1
  local t = topics[(n % #topics) + 1]
  local slot = n % 20
  if slot < 2 and not read_only then
    return wrk.format("POST", "/v1/memory/write", json,
      '{"content": "load ' .. n .. ': a note about ' .. t .. ' written under load", "space": "load"}')
  elseif slot < 12 then
    return wrk.format("GET", "/v1/memory/search?limit=5&query=" .. enc(t), plain)
  elseif slot < 16 then
    return wrk.format("POST", "/v1/memory/query", json,
      '{"query": "' .. t .. '", "mode": "keyword", "limit": 5}')
  elseif slot < 18 then
    return wrk.format("GET", "/v1/memory/count", plain)
  elseif slot < 19 then
    return wrk.format("GET", "/v1/memory/spaces", plain)
  else
    return wrk.format("GET", "/v1/usage/summary", plain)
  end
end
