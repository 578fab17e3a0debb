#!/usr/bin/env bash
# Throughput of 1 process x 1 thread, 1 process x 2 threads, 2 ranks x 1 thread (mpirun), for
# docs/distributed.md. Needs `cargo build --release -p fewshot-cli --features mpi` first and
# the Omniglot cache (cargo xtask download). STEPS=24 CONFIGS="hw15-strong paper-20w1s-plus".
set -euo pipefail
cd "$(dirname "$0")/.."
export OMNIGLOT_DATA_DIR=$PWD/data/omniglot RUST_LOG=warn
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
B=target/release/fewshot
steps=${STEPS:-24}
rate() { python3 -c "
import json,sys
L=[json.loads(l) for l in open('$1/metrics.jsonl')]
w={l['step']:l['wall_s'] for l in L}
a,b=4,$steps-1
print(f'{(b-a)/(w[b]-w[a]):.3f}')"; }
for cfg in ${CONFIGS:-hw15-strong paper-20w1s-plus}; do
  common=(train --config configs/$cfg.toml --set train.steps=$steps --set train.val_every=100000 --set train.val_log_points=0 --set train.log_every=1 --set train.first_order_steps=0 --set train.val_episodes=32 --set train.checkpoint_every=100000)
  for rep in 1 2; do
    rm -rf /tmp/mb; $B --threads 1 "${common[@]}" --out /tmp/mb >/dev/null 2>&1; r11=$(rate /tmp/mb)
    rm -rf /tmp/mb; $B --threads 2 "${common[@]}" --out /tmp/mb >/dev/null 2>&1; r12=$(rate /tmp/mb)
    rm -rf /tmp/mb; mpirun -n 2 --oversubscribe -x OMNIGLOT_DATA_DIR -x RUST_LOG $B --threads 1 "${common[@]}" --out /tmp/mb >/tmp/mb.log 2>&1; r21=$(rate /tmp/mb); grep "in exchanges" /tmp/mb.log
    echo "$cfg rep $rep steps/s: 1x1 $r11  1x2 $r12  2rx1 $r21  ratio(2r/1x2) $(python3 -c "print(f'{$r21/$r12:.3f}')")"
  done
done
