-- wrk script: the refresh_token grant with rotation. Every response's new refresh token is used
-- for a later request, as a real client does; reusing one would (rightly) revoke its family.
-- REFRESH_TOKENS is a space-separated list of chains' first tokens, passed by mint.sh and dealt
-- out to wrk's threads in turn. A thread keeps its chains' current tokens in a pool: a
-- connection takes one to send and its response puts the rotated one back, so one thread can
-- drive many connections (a thread per connection costs the two shared cores a lot more).
local tokens = {}
for t in string.gmatch(os.getenv("REFRESH_TOKENS") or "", "%S+") do table.insert(tokens, t) end
-- WRK_THREADS is wrk's -t: chain k goes to thread k modulo it.
local nthreads = tonumber(os.getenv("WRK_THREADS") or "1")
local next_thread = 0

function setup(thread)
  local mine = {}
  for k, t in ipairs(tokens) do
    if (k - 1) % nthreads == next_thread then table.insert(mine, t) end
  end
  thread:set("chains", table.concat(mine, " "))
  thread:set("first_thread", next_thread == 0)
  next_thread = next_thread + 1
end

function init(args)
  pool = {}
  for t in string.gmatch(chains or "", "%S+") do table.insert(pool, t) end
  -- wrk calls the first thread's request() once before the load to check the request; that
  -- call must not take a chain's token (it is never sent).
  checking = first_thread
end

local errors = 0
function request()
  local rt
  if checking then
    checking = false
    rt = "wrk-checks-the-request"
  else
    -- Empty only with more connections than chains: such a request fails, and is counted so.
    rt = table.remove(pool) or "no-chain-left"
  end
  return wrk.format("POST", nil, {["Content-Type"] = "application/x-www-form-urlencoded"},
    "grant_type=refresh_token&client_id=keypost-cli&refresh_token=" .. rt)
end

function response(status, headers, body)
  if status == 200 then
    local new = string.match(body, '"refresh_token":"([^"]+)"')
    if new then table.insert(pool, new) end
  else
    errors = errors + 1
    if errors <= 3 then io.stderr:write("unexpected " .. status .. ": " .. body .. "\n") end
  end
end
