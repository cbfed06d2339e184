#!/usr/bin/env bash
# Downloads, here, the wheels the GPU machine's image lacks (it has torch, triton, transformers,
# pytest and no network) into .whl/, which git ignores and the device call carries (a few MB).
#   bash benchmarks/gpu_wheels.sh        then: carry [".whl"], command: bash benchmarks/gpu_suite.sh
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
PY=${PY:-python3}
WHEELS=(pydantic==2.14.4 pydantic-core==2.50.5 pydantic-settings==2.16.3 python-dotenv==1.2.4
        typing-inspection==0.4.5 annotated-types==0.8.0 gguf==0.19.0 jsonschema==4.26.0
        jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1)
PLATFORMS=()
for n in 39 35 34 31 28 27 24 17; do PLATFORMS+=(--platform "manylinux_2_${n}_x86_64"); done
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" --platform manylinux2014_x86_64 --platform any -d .whl "${WHEELS[@]}"
du -sh .whl
