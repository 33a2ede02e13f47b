"""Every stage's model on the target evaluation split: per-class IoU and mIoU (percent)."""


rule evaluate:
    input:
        unpack(inputs_of),
    output:
        "{node}.csv",
    log:
        "{node}.log",
    benchmark:
        "{node}.benchmark.tsv"
    wildcard_constraints:
        node=node_pattern("eval"),
    conda:
        "../../environment.yml"
    threads: threads_of("evaluate")
    resources:
        **resources_of("evaluate"),
    params:
        cfg=view_of,
    script:
        "../scripts/evaluate.py"
