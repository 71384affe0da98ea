-- wrk script: a JMAP API request whose body is given in the JMAP_BODY environment variable
-- (bench/jmap.sh builds Email/get of 50 ids, or Email/query with a text filter).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("JMAP_TOKEN")
wrk.body = os.getenv("JMAP_BODY")

local errors = 0
function response(status, headers, body)
  if status ~= 200 or string.find(body, '"error"') then
    errors = errors + 1
    if errors <= 3 then io.stderr:write("unexpected " .. status .. ": " .. string.sub(body, 1, 300) .. "\n") end
  end
end
