"""Pseudo labels on the target train split: soft ones from the warm-up model (stage 1 input),
hard ones with flip averaging from stage 1 and stage 2 (stage 2 and stage 3 inputs)."""


rule soft_labels:
    input:
        unpack(inputs_of),
    output:
        "{node}.h5",
    log:
        "{node}.log",
    benchmark:
        "{node}.benchmark.tsv"
    wildcard_constraints:
        node=node_pattern("soft_labels"),
    conda:
        "../../environment.yml"
    threads: threads_of("soft_labels")
    resources:
        **resources_of("soft_labels"),
    params:
        cfg=view_of,
    script:
        "../scripts/soft_labels.py"


rule hard_labels:
    input:
        unpack(inputs_of),
    output:
        "{node}.h5",
    log:
        "{node}.log",
    benchmark:
        "{node}.benchmark.tsv"
    wildcard_constraints:
        node=node_pattern("hard_labels"),
    conda:
        "../../environment.yml"
    threads: threads_of("hard_labels")
    resources:
        **resources_of("hard_labels"),
    params:
        cfg=view_of,
    script:
        "../scripts/hard_labels.py"
