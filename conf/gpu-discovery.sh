#!/usr/bin/env bash
# Spark GPU resource discovery script (spark.{driver,executor,worker}.resource.gpu.discoveryScript).
#
# Spark runs this on every executor (and standalone worker) start and expects ONE line of JSON
# on stdout in the ResourceInformation format:
#     {"name": "gpu", "addresses": ["0","1","2","3"]}
# The addresses are the CUDA device indices visible to this process (inside a YARN/K8s container
# nvidia-smi lists only the GPUs that were allocated to the container).
#
# With no nvidia-smi (a CPU node, CI) or when it fails, it prints an empty address list rather
# than failing, so the same image/config can start on CPU-only hosts; Spark then refuses to
# schedule GPU-requiring executors there with a clear "needs 1 gpu, found 0" error instead of a
# cryptic discovery-script failure.
#
# NVIDIA_SMI overrides the binary (used by the tests with a fake nvidia-smi).
set -u
smi="${NVIDIA_SMI:-nvidia-smi}"
addrs=""
if command -v "$smi" >/dev/null 2>&1; then
  # "0\n1\n" -> "0","1"   (strip spaces/CR; ignore blank lines; fail soft)
  if out="$("$smi" --query-gpu=index --format=csv,noheader 2>/dev/null)"; then
    addrs="$(printf '%s\n' "$out" | tr -d ' \r' | grep -E '^[0-9]+$' | sed 's/.*/"&"/' | paste -sd, -)"
  fi
fi
printf '{"name": "gpu", "addresses": [%s]}\n' "$addrs"
