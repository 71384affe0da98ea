-- wrk script: the refresh_token grant with rotation. Each thread (one connection each) follows
-- its own chain: every response's new refresh token is used for the next request, as a real
-- client does; reusing one would (rightly) revoke the family.
-- REFRESH_TOKENS is a space-separated list, one per thread, passed by mint.sh.
local tokens = {}
for t in string.gmatch(os.getenv("REFRESH_TOKENS") or "", "%S+") do table.insert(tokens, t) end
local next_thread = 1

function setup(thread)
  thread:set("rt", tokens[next_thread])
  next_thread = next_thread + 1
end

local errors = 0
function request()
  return wrk.format("POST", nil, {["Content-Type"] = "application/x-www-form-urlencoded"},
    "grant_type=refresh_token&client_id=keypost-cli&refresh_token=" .. rt)
end

function response(status, headers, body)
  if status == 200 then
    local new = string.match(body, '"refresh_token":"([^"]+)"')
    if new then rt = new end
  else
    errors = errors + 1
    if errors <= 3 then io.stderr:write("unexpected " .. status .. ": " .. body .. "\n") end
  end
end
