#!/usr/bin/env bash
# Issue 18 benchmark: bring your own backbone, on CIFAR-10 photos (../shared/data/cifar10/cifar10_600.zip).
#   1. timm MobileNetV3-Small, torchvision ResNet-18 and Conv4 meta-trained from scratch on 6 CIFAR-10 classes
#      (4 held out, split seed 0) through `metaedge train`, about ten minutes of one CPU thread each;
#      4-way 1-shot and 5-shot accuracy with 95% CI on the held-out classes (`metaedge evaluate`, 1000 episodes).
#   2. An ONNX feature extractor made outside metaedge (torchvision MobileNetV3-Small, plain torch.onnx.export)
#      wrapped by `metaedge export --onnx` (fp32 and int8), enrolled and classified through the CLI on photos.
#   3. `metaedge profile` of those bundles at 224x224 and of the shipped Omniglot bundle, in the same run.
# Usage: bash scripts/byo_backbone_benchmark.sh [OUT_DIR]   (default /tmp/byo_bench; stages already done are kept)
#   env: SCALE (1): multiplies stage 1's episode counts (the CPU budget, equal across the three networks);
#        PRETRAIN (0): epochs of classifier pre-training on the six training classes before the episodes
#        (`--pretrain-epochs`); set, each network gets that many epochs plus the episode count PRETRAIN_EPISODES
#        gives it ("conv4 mnv3s resnet18" order; default "2500 1500 200", the session's measured run);
#        STAGES ("1 2 3"): the stages to run (3 needs 2's outputs and makes them where missing).
# Each step runs under `nice -n 10` on one thread: the machine it was measured on is shared.
set -euo pipefail
OUT=${1:-/tmp/byo_bench}
DATA=${DATA:-$(cd "$(dirname "$0")/.." && pwd)/../shared/data/cifar10/cifar10_600.zip}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
RUN="nice -n 10 metaedge"
SCALE=${SCALE:-1}
STAGES=${STAGES:-1 2 3}
stage() { [[ " $STAGES " == *" $1 "* ]]; }
mkdir -p "$OUT"

# --- 1. meta-training from scratch at the same budget: the three run side by side, one thread each, with
# episode counts that cost each about the same CPU time (~120 CPU-seconds measured on the dev VM; /usr/bin/time
# records user+sys of each in time-NAME.txt), about ten minutes of wall time on the shared machine.
COMMON=(--data "$DATA" --preprocess rgb --image-size 32 --no-rotations --way 6 --shot 5 --query 10
        --holdout-groups 4 --val-groups 0 --seed 0 --device cpu)
train() {  # name backbone episodes
  [ -f "$OUT/runs/$1/best.safetensors" ] || /usr/bin/time -f "%U user %S sys %e wall" -o "$OUT/time-$1.txt" \
    $RUN train "${COMMON[@]}" --backbone "$2" --episodes "$3" --val-every "$3" --out "$OUT/runs/$1" --json \
    > "$OUT/train-$1.json"
}
PRETRAIN=${PRETRAIN:-0}
if [ "$PRETRAIN" -gt 0 ]; then
  COMMON+=(--pretrain-epochs "$PRETRAIN")
  read -r EP_CONV4 EP_MNV3S EP_R18 <<<"${PRETRAIN_EPISODES:-2500 1500 200}"
else
  EP_CONV4=$((750 * SCALE)) EP_MNV3S=$((600 * SCALE)) EP_R18=$((200 * SCALE))
fi
if stage 1; then
train conv4 conv4 "$EP_CONV4" &
train mnv3s timm:mobilenetv3_small_100 "$EP_MNV3S" &
train resnet18 torchvision:resnet18 "$EP_R18" &
wait
for run in conv4 mnv3s resnet18; do
  for shot in 1 5; do
    [ -f "$OUT/eval-$run-${shot}shot.json" ] || $RUN evaluate "$OUT/runs/$run" --way 4 --shot $shot --query 15 \
      --episodes 1000 --seed 0 --device cpu --json > "$OUT/eval-$run-${shot}shot.json"
  done
done
fi
stage 2 || stage 3 || exit 0

# --- 2. an ONNX feature extractor made outside metaedge -> bundle -> Runtime and CLI on photos ------------------
# Photos: 30 test images of each held-out class to verify, enroll and classify; 60 of each training class to
# calibrate int8. The network: torchvision MobileNetV3-Small, classifier removed, exported by a plain
# torch.onnx.export. No pretrained weights can be downloaded here and random ones give vanishing features, so its
# batch-norm statistics are set from the calibration photos (as tests/test_onnx_import.py does).
python - "$DATA" "$OUT" <<'PY'
import json, sys, zipfile
from pathlib import Path
import torch, torchvision
from PIL import Image
from metaedge.data import open_dataset, split_groups
data, out = sys.argv[1], Path(sys.argv[2])
split = split_groups(open_dataset(data).split_units(), 4, 0, 0)  # the runs' split: seed 0, 4 held out
with zipfile.ZipFile(data) as z:
    for part, keys, first, count in (("photos", split.test, 500, 30), ("calib", split.train, 0, 60)):
        for key in keys:
            cls = key.split("/")[1]
            (out / part / cls).mkdir(parents=True, exist_ok=True)
            for i in range(first, first + count):
                (out / part / cls / f"{i:04d}.jpg").write_bytes(z.read(f"cifar10/{cls}/{i:04d}.jpg"))
t = torchvision.transforms
tf = t.Compose([t.Resize(256), t.CenterCrop(224), t.ToTensor(), t.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
torch.manual_seed(0)
net = torchvision.models.mobilenet_v3_small(weights=None)
net.classifier = torch.nn.Identity()
for m in net.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
        m.reset_running_stats(); m.momentum = None
net.train()
with torch.no_grad():
    net(torch.stack([tf(Image.open(p).convert("RGB")) for p in sorted((out / "calib").glob("*/*.jpg"))[::4]]))
net.eval()
torch.save(net.state_dict(), out / "mnv3s_tv.pth")
torch.onnx.export(net, (torch.zeros(2, 3, 224, 224),), str(out / "mnv3s_tv.onnx"), input_names=["input"],
                  output_names=["features"], dynamic_shapes=({0: torch.export.Dim("batch")},))
PY
for prec in fp32 int8; do
  flags=(); [ $prec = int8 ] && flags=(--int8 --calibration-data "$OUT/calib" --force)  # --force: see the report
  [ -d "$OUT/bundle-$prec" ] || $RUN export --onnx "$OUT/mnv3s_tv.onnx" --preprocess imagenet \
    --verify-data "$OUT/photos" --out "$OUT/bundle-$prec" --json "${flags[@]}" > "$OUT/export-$prec.json"
done
# Runtime and PyTorch side by side: embeddings, and 4-way 5-shot answers (shots 0500-0504, queries the rest).
python - "$OUT" <<'PY' | tee "$OUT/parity-runtime.json"
import json, sys
from pathlib import Path
import numpy as np, torch, torchvision
from PIL import Image
import metaedge
out = Path(sys.argv[1])
t = torchvision.transforms
tf = t.Compose([t.Resize(256), t.CenterCrop(224), t.ToTensor(), t.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
net = torchvision.models.mobilenet_v3_small(weights=None); net.classifier = torch.nn.Identity()
net.load_state_dict(torch.load(out / "mnv3s_tv.pth", weights_only=True)); net.eval()
paths = sorted((out / "photos").glob("*/*.jpg")); classes = sorted({p.parent.name for p in paths})
with torch.no_grad():
    ref = net(torch.stack([tf(Image.open(p).convert("RGB")) for p in paths])).numpy()
support = [i for i, p in enumerate(paths) if int(p.stem) < 505]; query = [i for i in range(len(paths)) if i not in support]
protos = np.stack([ref[[i for i in support if paths[i].parent.name == c]].mean(0) for c in classes])
cos = lambda a, b: (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (b / np.linalg.norm(b, axis=1, keepdims=True)).T
torch_answers = [classes[j] for j in cos(ref[query], protos).argmax(1)]
report = {}
for prec in ("fp32", "int8"):
    with metaedge.Runtime(out / f"bundle-{prec}") as rt:
        z = rt.embed(paths)
        for c in classes:
            rt.enroll(c, [paths[i] for i in support if paths[i].parent.name == c])
        answers = [p.label for p in rt.classify([paths[i] for i in query], threshold=None)]
    truth = [paths[i].parent.name for i in query]
    report[prec] = {"max_abs_diff": float(np.abs(z - ref).max()), "min_cosine": float(np.diag(cos(z, ref)).min()),
                    "same_answer_as_pytorch": float(np.mean([a == b for a, b in zip(answers, torch_answers)])),
                    "accuracy": float(np.mean([a == b for a, b in zip(answers, truth)])),
                    "pytorch_accuracy": float(np.mean([a == b for a, b in zip(torch_answers, truth)])), "queries": len(query)}
print(json.dumps(report))
PY
# The CLI on the same photos: enroll 5 of each class, classify the others.
rm -f "$OUT/gallery.db"
for dir in "$OUT"/photos/*/; do
  $RUN enroll "$(basename "$dir")" "$dir"/050[0-4].jpg --bundle "$OUT/bundle-fp32" --store "$OUT/gallery.db" --json
done > "$OUT/cli-enroll.json"
$RUN classify $(ls "$OUT"/photos/*/05[1-2]*.jpg) --bundle "$OUT/bundle-fp32" --store "$OUT/gallery.db" \
  --no-threshold --json > "$OUT/cli-classify.json"
python -c "import json,sys; r=json.load(open(sys.argv[1])); print('CLI 4-way 5-shot:', sum(x['label']==x['image'].split('/')[-2] for x in r), '/', len(r))" "$OUT/cli-classify.json"

# --- 3. latency at 224x224 beside the shipped Omniglot bundle, in the same run ---------------------------------
PROFILE=(--batch 1,8 --shots 1,5 --ways 5 --iterations 30 --backend onnxruntime)
$RUN profile "${PROFILE[@]}" --json "$OUT/profile-omniglot.json" > "$OUT/profile-omniglot.txt"
for prec in fp32 int8; do
  $RUN profile --bundle "$OUT/bundle-$prec" "${PROFILE[@]}" --json "$OUT/profile-$prec.json" > "$OUT/profile-$prec.txt"
  $RUN profile --compare "$OUT/profile-omniglot.json" "$OUT/profile-$prec.json" > "$OUT/compare-$prec.txt"
done
