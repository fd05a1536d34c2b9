#!/usr/bin/env bash
# kv-cache-tester's trace_replay_tester.py against `pyserve serve --executor sim` (docs/sessions.md,
# "Serving on the simulator"). The tester is not part of pyserve: clone it and install its
# requirements (openai, transformers, plotly, pandas, numpy, aiohttp) in PYTHON's environment.
#
#   benchmarks/kv_cache_tester_on_sim.sh KVCT_DIR TRACE_DIR OUT_DIR [tester flags...]
#
# Env: PRESET (llama3-8b-h100), PORT (8011), PYTHON (python3, runs the tester), SERVE_FLAGS
# (extra `pyserve serve` flags, e.g. "--kv-retention program --cpu-cache-gib 64").
# The tester tokenizes with builtin:tiny's tokenizer (the server's under --executor sim), so its
# token counts are the server's. Prints the server's pacing and prefix-cache metrics at the end.
set -euo pipefail
kvct=$1 traces=$2 out=$3
shift 3
preset=${PRESET:-llama3-8b-h100} port=${PORT:-8011} py=${PYTHON:-python3}
tokenizer=$(python -c "from pyserve.model.loader import resolve_model_path as r; print(r('builtin:tiny'))")
# shellcheck disable=SC2086
pyserve serve --executor sim --preset "$preset" --port "$port" --log-level warning ${SERVE_FLAGS:-} &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 120); do
  curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
  sleep 1
done
"$py" "$kvct/trace_replay_tester.py" --api-endpoint "http://127.0.0.1:$port" \
  --trace-directory "$traces" --output-dir "$out" --tokenizer "$tokenizer" --no-color "$@"
echo "--- pyserve server metrics ($preset) ---"
curl -s "http://127.0.0.1:$port/metrics" | grep -E '^pyserve:(sim_|prefix_cache|num_preemptions|kv_cache_blocks_total|prompt_tokens|generation_tokens)'
