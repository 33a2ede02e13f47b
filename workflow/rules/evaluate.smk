"""Every stage's model on the target evaluation split: per-class IoU and mIoU (percent)."""


rule evaluate:
    input:
        checkpoint=artifact("checkpoint"),
        data=DATA.get("data", []),
    output:
        out="{node}.csv",
        record="{node}.record.yaml",
    log:
        "{node}.log",
    benchmark:
        "{node}.benchmark.tsv"
    wildcard_constraints:
        node=nodes_of("evaluate"),
    conda:
        "../../environment.yml"
    threads: threads_of("evaluate")
    resources:
        **resources_of("evaluate"),
    params:
        step=STUDY.step_of,
        view=STUDY.view_of,
    script:
        "../scripts/step.py"
