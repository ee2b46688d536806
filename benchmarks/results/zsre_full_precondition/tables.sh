#!/bin/bash
# The selection and test tables of the full key preconditioner, training seed 0 (docs/findings.md), from the committed result files; run from the repository root.
# RLEdit's row is over the two selection sequences run first; full_preconditioner_choice/zsre_selection.md has all three.

F=benchmarks/results/zsre_full_precondition; Q=benchmarks/results/zsre_selection_sequences; B=benchmarks/results/zsre_selection_baselines
P=benchmarks/results/zsre_precondition; D=benchmarks/results/zsre_direction; M=benchmarks/results/zsre_more_sequences
hiedit table --rows \
    "hiedit, full=$F/selection/hiedit_*.json" "rledit, full=$F/selection/rledit_full_train_seed0_seq100[01].json" \
    "untrained all 18, full=$F/untrained/untrained_all18_full_train_seed*.json" \
    "hiedit, diagonal (seed 0)=benchmarks/results/zsre_precondition/selection/hiedit_pc_train_seed0.json,$Q/hiedit_*.json" \
    "rledit, diagonal (seed 0)=benchmarks/results/zsre_precondition/selection/rledit_pc_train_seed0.json,$Q/rledit_*.json" \
    "untrained all 18, diagonal=$B/untrained_all18_train_seed1000.json,$Q/untrained_*.json" \
    "ft_l=$B/ft_l_train_seed1000.json,$Q/ft_l_*.json" --markdown $F/selection.md
hiedit table --rows \
    "hiedit, full=$F/test/hiedit_*.json" "rledit, full=$F/test/rledit_*.json" \
    "untrained all 18, full=$F/untrained/untrained_all18_full_test_seed*.json" \
    "hiedit, diagonal=$P/test/hiedit_pc_train_seed0_episode*.json,$M/hiedit_*.json" \
    "rledit, diagonal=$P/test/rledit_pc_train_seed0_episode*.json,$M/rledit_*.json" \
    "untrained all 18, diagonal=$P/untrained/untrained_all18_test_seed*.json,$M/untrained_*.json" \
    "ft_l=$D/ft_l.json,$D/seed*/ft_l.json,$M/ft_l_*.json" --markdown $F/test.md
