-- wrk script: the client_credentials grant, HTTP Basic client authentication.
-- CLIENT_AUTH is "Basic base64(id:secret)", passed through the environment by mint.sh.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = os.getenv("CLIENT_AUTH")
wrk.body = "grant_type=client_credentials&scope=mail"

local errors = 0
function response(status, headers, body)
  if status ~= 200 then
    errors = errors + 1
    if errors <= 3 then io.stderr:write("unexpected " .. status .. ": " .. body .. "\n") end
  end
end
