-- Every request carries the same Idempotency-Key: after the first, each one is a replay.
-- LOAD_COOKIE, when set, is sent as the Cookie header (axum-idempotent needs a session).
local cookie = os.getenv("LOAD_COOKIE")
local headers = {
  ["Content-Type"] = "application/json",
  ["Idempotency-Key"] = "replayed-key",
}
if cookie and cookie ~= "" then headers["Cookie"] = cookie end
local req = wrk.format("POST", "/orders", headers, '{"customer_id":"C001","amount":1200}')

function request()
  return req
end
