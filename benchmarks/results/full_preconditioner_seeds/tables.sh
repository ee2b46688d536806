#!/bin/bash
# The learned editors with the full key preconditioner over three training seeds (docs/findings.md), from the committed result files; run from the repository root
F=benchmarks/results/zsre_full_precondition; R=$F/size_ratio; S=$F/rledit_seeds; C=benchmarks/results/counterfact_full_precondition
Q=benchmarks/results/zsre_selection_sequences; B=benchmarks/results/zsre_selection_baselines
D=benchmarks/results/zsre_direction; M=benchmarks/results/zsre_more_sequences; CD=benchmarks/results/counterfact_direction
O=benchmarks/results/full_preconditioner_seeds
hiedit table --rows \
    "hiedit, full (training seeds 0, 100, 200)=$F/selection/hiedit_*.json,$F/seed100/*_seq*.json,$F/seed200/*_seq*.json" \
    "rledit, full, max_size_ratio 3 (seeds 0, 100, 200)=$R/rledit_*_seq*.json,$S/rledit_full_ratio3_*_seq*.json" \
    "untrained all 18, full=$F/untrained/untrained_all18_full_train_seed*.json" \
    "ft_l=$B/ft_l_train_seed1000.json,$Q/ft_l_*.json" --markdown $O/zsre_selection.md
hiedit table --rows \
    "hiedit, full (training seeds 0, 100, 200)=$F/test/hiedit_*.json,$F/seed100/*_episode*.json,$F/seed200/*_episode*.json" \
    "rledit, full, max_size_ratio 3 (seeds 0, 100, 200)=$R/rledit_*_episode*.json,$S/rledit_full_ratio3_*_episode*.json" \
    "rledit, full (seeds 0, 100, 200)=$F/test/rledit_*.json,$S/rledit_full_train_*_episode*.json" \
    "untrained all 18, full=$F/untrained/untrained_all18_full_test_seed*.json" \
    "ft_l=$D/ft_l.json,$D/seed*/ft_l.json,$M/ft_l_*.json" --markdown $O/zsre_test.md
hiedit table --rows \
    "hiedit, full (training seeds 0, 100, 200)=$C/trained/hiedit_full_*.json" \
    "rledit, full, max_size_ratio 3 (seeds 0, 100)=$C/trained/rledit_full_ratio3_*.json" \
    "rledit, full (seeds 0, 100)=$C/trained/rledit_full_train_*.json" \
    "untrained all 18, full=$C/untrained/untrained_all18_full_seed*.json" \
    "ft_l=$CD/ft_l.json,$CD/seed*/ft_l.json" --markdown $O/counterfact.md
