-- wrk script: POST /internal/quota/check with the service token (usage-meter benchmark).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("USAGE_BENCH_TOKEN") or "dev-admin-token")
wrk.body = '{"orgId":"bench-org","metric":"api_request","amount":1}'
