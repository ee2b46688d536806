#!/bin/bash
# The tables that chose the full key preconditioner as the default (docs/findings.md), training seeds 0 and 100, from the committed result files; run from the repository root
F=benchmarks/results/zsre_full_precondition; R=$F/size_ratio; C=benchmarks/results/counterfact_full_precondition
Q=benchmarks/results/zsre_selection_sequences; B=benchmarks/results/zsre_selection_baselines
P=benchmarks/results/zsre_precondition; D=benchmarks/results/zsre_direction; M=benchmarks/results/zsre_more_sequences
CP=benchmarks/results/counterfact_precondition; CD=benchmarks/results/counterfact_direction
O=benchmarks/results/full_preconditioner_choice
hiedit table --rows \
    "hiedit, full (training seeds 0, 100)=$F/selection/hiedit_*.json,$F/seed100/*_seq*.json" \
    "hiedit, full, max_size_ratio 3 (seed 100)=$R/hiedit_*.json" \
    "rledit, full, max_size_ratio 3 (seed 0)=$R/rledit_*_seq*.json" \
    "rledit, full (seed 0)=$F/selection/rledit_*.json" \
    "untrained all 18, full=$F/untrained/untrained_all18_full_train_seed*.json" \
    "hiedit, diagonal (seed 0)=$P/selection/hiedit_pc_train_seed0.json,$Q/hiedit_*.json" \
    "rledit, diagonal (seed 0)=$P/selection/rledit_pc_train_seed0.json,$Q/rledit_*.json" \
    "untrained all 18, diagonal=$B/untrained_all18_train_seed1000.json,$Q/untrained_*.json" \
    "ft_l=$B/ft_l_train_seed1000.json,$Q/ft_l_*.json" --markdown $O/zsre_selection.md
hiedit table --rows \
    "hiedit, full (training seeds 0, 100)=$F/test/hiedit_*.json,$F/seed100/*_episode*.json" \
    "rledit, full, max_size_ratio 3 (seed 0)=$R/rledit_*_episode*.json" \
    "rledit, full (seed 0)=$F/test/rledit_*.json" \
    "untrained all 18, full=$F/untrained/untrained_all18_full_test_seed*.json" \
    "hiedit, diagonal (seed 0)=$P/test/hiedit_pc_train_seed0_episode*.json,$M/hiedit_*.json" \
    "rledit, diagonal (seed 0)=$P/test/rledit_pc_train_seed0_episode*.json,$M/rledit_*.json" \
    "untrained all 18, diagonal=$P/untrained/untrained_all18_test_seed*.json,$M/untrained_*.json" \
    "ft_l=$D/ft_l.json,$D/seed*/ft_l.json,$M/ft_l_*.json" --markdown $O/zsre_test.md
hiedit table --rows \
    "hiedit, full (training seeds 0, 100)=$C/trained/hiedit_full_train_seed0_*.json,$C/trained/hiedit_full_train_seed100_*.json" \
    "rledit, full, max_size_ratio 3 (seed 0)=$C/trained/rledit_full_ratio3_train_seed0_*.json" \
    "rledit, full (seed 0)=$C/trained/rledit_full_train_seed0_*.json" \
    "untrained all 18, full=$C/untrained/untrained_all18_full_seed*.json" \
    "hiedit, diagonal (seeds 0, 100, 200)=$CP/hiedit_*.json" \
    "rledit, diagonal (seeds 0, 100, 200)=$CP/rledit_*.json" \
    "untrained all 18, diagonal=$CP/untrained_*.json" \
    "ft_l=$CD/ft_l.json,$CD/seed*/ft_l.json" --markdown $O/counterfact.md
