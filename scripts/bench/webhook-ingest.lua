-- wrk script for scripts/bench/webhook-ingest.sh: signed payment_intent.succeeded deliveries,
-- each with its own event id. Reads the pre-signed lines (id \t Stripe-Signature) and the body
-- template written by `cargo run --example bench_deliveries`; thread k of n sends lines k, k+n, …
-- so no two threads send the same id. Past the end of its lines a thread wraps (duplicates).
-- BENCH_FIRST and BENCH_END (optional) restrict a run to lines [first, end), so a warm-up and the
-- measured run can use different ids from one file.
local counter = 0
local threads = {}

function setup(thread)
  thread:set("index", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  local prefix = os.getenv("BENCH_DELIVERIES")
  local total = tonumber(os.getenv("BENCH_THREADS"))
  local first = tonumber(os.getenv("BENCH_FIRST") or "0")
  local stop = tonumber(os.getenv("BENCH_END") or "") or math.huge
  local f = assert(io.open(prefix .. ".template", "rb"))
  local template = f:read("*a")
  f:close()
  local at = string.find(template, "__EVENT_ID__", 1, true)
  head = string.sub(template, 1, at - 1)
  tail = string.sub(template, at + string.len("__EVENT_ID__"))
  lines = {}
  local n = 0
  for line in io.lines(prefix .. ".lines") do
    if n >= stop then break end
    if n >= first and n % total == index then
      local tab = string.find(line, "\t", 1, true)
      table.insert(lines, { string.sub(line, 1, tab - 1), string.sub(line, tab + 1) })
    end
    n = n + 1
  end
  next_line = 1
end

function request()
  local entry = lines[next_line]
  next_line = next_line + 1
  if next_line > #lines then next_line = 1 end
  local headers = { ["Content-Type"] = "application/json", ["Stripe-Signature"] = entry[2] }
  return wrk.format("POST", "/api/webhooks/stripe", headers, head .. entry[1] .. tail)
end
