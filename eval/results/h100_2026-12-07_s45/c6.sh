#!/bin/bash
# leanest: branch wip/attn-qrope (step op) vs main, whole-model compile, batch 32 then batch 1, alternating.
source .carry/s45/common.sh
B="${B%--batch 1,32}"
e2e qrope_nco_b32 branch 100 --no-compile-once --batch 32
e2e main_nco_b32 main 100 --no-compile-once --batch 32
e2e qrope_nco_b1 branch 100 --no-compile-once --batch 1
e2e main_nco_b1 main 100 --no-compile-once --batch 1
