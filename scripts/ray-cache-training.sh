# Does a training run on a cache filled by `segsplat extract` on Ray score the same as one on an in-process cache?
# Two copies of one synthetic scene; A: masks extracted on a local Ray cluster (2 workers), B: computed inside
# ns-train. Both trained and evaluated with the same flags; prints each ns-eval metric for A and B. Usage:
# bash scripts/ray-cache-training.sh [WORKDIR]   (about 3 minutes on 2 cores)
set -e
B=$(cd "$(dirname "$0")/.." && pwd)/.venv/bin
W=${1:-/tmp/ray-cache-training}; mkdir -p "$W" && cd "$W"
export SEGSPLAT_NO_DOWNLOAD=1 PYTHONUNBUFFERED=1
rm -rf sceneA sceneB runs
$B/segsplat make-scene --output sceneA --seed 0 --num-objects 2 --width 64 --height 64 --num-train-views 16 --num-eval-views 4
cp -r sceneA sceneB
$B/segsplat extract --data sceneA --ray-address local --workers 2 --datamanager.masks.source classical --datamanager.language.source folder 2>&1 | tail -5
ARGS=$($B/python -c "
from segsplat_ns.runs import small_scene_training_args; from segsplat_ns.registry import get_method
print(' '.join(small_scene_training_args(300,150)+list(get_method('saga').cpu_training_args(tiny=True))))")
for s in A B; do
  $B/ns-train saga --data scene$s --output-dir runs --experiment-name $s --timestamp t --vis tensorboard --viewer.quit-on-train-completion True --pipeline.datamanager.masks.source classical --pipeline.datamanager.language.source folder $ARGS > train$s.log 2>&1
  $B/ns-eval --load-config runs/$s/saga/t/config.yml --output-path eval$s.json > eval$s.log 2>&1
done
echo "mask computations inside ns-train (A: Ray-filled cache, expect 0; B: in-process, expect 1):"
for s in A B; do echo "  $s: $(grep -c "Masks (classical)" train$s.log || true)"; done
$B/python - <<'P'
import json
a=json.load(open('evalA.json'))['results']; b=json.load(open('evalB.json'))['results']
for k in sorted(a):
    if not k.endswith('_std'): print(f"{k:40s} {a[k]!s:>22} {b.get(k)!s:>22} {'SAME' if a[k]==b.get(k) else 'DIFF'}")
P
