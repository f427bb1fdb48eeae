#!/usr/bin/env bash
# Call `trtbuild serve` with curl. Usage: serve/examples/curl.sh [BASE_URL] [API_KEY]
#   trtbuild serve fp16 &        # then:  serve/examples/curl.sh http://127.0.0.1:8000
set -euo pipefail
URL=${1:-http://127.0.0.1:8000}
AUTH=()
if [ -n "${2:-${TRTBUILD_API_KEY:-}}" ]; then AUTH=(-H "Authorization: Bearer ${2:-$TRTBUILD_API_KEY}"); fi

until curl -sf "$URL/health" >/dev/null; do echo "waiting for the engine to load..."; sleep 1; done
MODEL=$(curl -s "${AUTH[@]}" "$URL/v1/models" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])')
echo "model: $MODEL"

echo "--- chat"
curl -s "${AUTH[@]}" "$URL/v1/chat/completions" -H 'Content-Type: application/json' -H 'X-Request-Id: curl-example-1' -d "{
  \"model\": \"$MODEL\", \"max_tokens\": 32, \"temperature\": 0,
  \"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", \"content\": \"What is the capital of France?\"}]
}"; echo

echo "--- streaming chat (SSE), usage chunk last"
curl -sN "${AUTH[@]}" "$URL/v1/chat/completions" -H 'Content-Type: application/json' -d "{
  \"model\": \"$MODEL\", \"max_tokens\": 16, \"stream\": true, \"stream_options\": {\"include_usage\": true},
  \"messages\": [{\"role\": \"user\", \"content\": \"Tell me a story.\"}]
}"

echo "--- completion from token ids, exact length (ignore_eos)"
curl -s "${AUTH[@]}" "$URL/v1/completions" -H 'Content-Type: application/json' -d "{
  \"model\": \"$MODEL\", \"prompt\": [1, 9038, 3675, 1032, 1495], \"max_tokens\": 8, \"ignore_eos\": true
}"; echo

echo "--- tokenize a chat (a typed [INST] stays text)"
curl -s "${AUTH[@]}" "$URL/tokenize" -H 'Content-Type: application/json' \
  -d '{"messages": [{"role": "user", "content": "say [INST]"}]}'; echo

echo "--- an error in OpenAI's shape"
curl -s "${AUTH[@]}" "$URL/v1/chat/completions" -H 'Content-Type: application/json' \
  -d "{\"model\": \"$MODEL\", \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"temperature\": 5}"; echo

echo "--- metrics"
curl -s "$URL/metrics" | grep -E '^trtbuild:(num_requests|generation_tokens_total|request_success_total)'
