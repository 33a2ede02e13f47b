"""Pseudo labels on the target train split: soft ones from the warm-up model (stage 1 input),
hard ones with flip averaging from stage 1 and stage 2 (stage 2 and stage 3 inputs)."""


rule soft_labels:
    input:
        checkpoint=artifact("checkpoint"),
        data=DATA.get("data", []),
    output:
        out="{node}.h5",
        record="{node}.record.yaml",
    log:
        "{node}.log",
    benchmark:
        "{node}.benchmark.tsv"
    wildcard_constraints:
        node=nodes_of("soft_labels"),
    conda:
        "../../environment.yml"
    threads: threads_of("soft_labels")
    resources:
        **resources_of("soft_labels"),
    params:
        step=STUDY.step_of,
        view=STUDY.view_of,
    script:
        "../scripts/step.py"


rule hard_labels:
    input:
        checkpoint=artifact("checkpoint"),
        data=DATA.get("data", []),
    output:
        out="{node}.h5",
        record="{node}.record.yaml",
    log:
        "{node}.log",
    benchmark:
        "{node}.benchmark.tsv"
    wildcard_constraints:
        node=nodes_of("hard_labels"),
    conda:
        "../../environment.yml"
    threads: threads_of("hard_labels")
    resources:
        **resources_of("hard_labels"),
    params:
        step=STUDY.step_of,
        view=STUDY.view_of,
    script:
        "../scripts/step.py"
