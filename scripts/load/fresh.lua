-- Every request carries a new Idempotency-Key: the layer runs the handler each time.
-- LOAD_COOKIE, when set, is sent as the Cookie header (axum-idempotent needs a session).
local cookie = os.getenv("LOAD_COOKIE")
local counter = 0

function setup(thread)
  thread:set("prefix", string.format("%d-%d", os.time(), math.random(1, 1000000000)))
end

function request()
  counter = counter + 1
  local headers = {
    ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = prefix .. "-" .. counter,
  }
  if cookie and cookie ~= "" then headers["Cookie"] = cookie end
  return wrk.format("POST", "/orders", headers, '{"customer_id":"C001","amount":1200}')
end
