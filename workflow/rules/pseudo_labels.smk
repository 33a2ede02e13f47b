"""Pseudo labels on the target train split: soft ones from the warm-up model (stage 1 input),
hard ones with flip averaging from stage 1 and stage 2 (stage 2 and stage 3 inputs)."""


rule soft_labels:
    input:
        checkpoint=f"{RES}/warmup/model.pt",
        data=data_input(),
    output:
        f"{RES}/pseudo/soft_warmup.h5",
    params:
        cfg=view("soft_labels"),
        key=KEYS["soft_labels"],
    threads: threads_of("soft_labels")
    resources:
        **resources_of("soft_labels"),
    log:
        log_of("soft_labels"),
    benchmark:
        benchmark_of("soft_labels")
    conda:
        "../../environment.yml"
    script:
        "../scripts/soft_labels.py"


rule hard_labels:
    input:
        checkpoint=f"{RES}/{{stage}}/model.pt",
        data=data_input(),
    output:
        f"{RES}/pseudo/hard_{{stage}}.h5",
    params:
        cfg=view("hard_labels"),
        key=lambda wc: KEYS[f"hard_labels_{wc.stage}"],
    wildcard_constraints:
        stage="stage1|stage2",
    threads: threads_of("hard_labels")
    resources:
        **resources_of("hard_labels"),
    log:
        log_of("hard_labels_{stage}"),
    benchmark:
        benchmark_of("hard_labels_{stage}")
    conda:
        "../../environment.yml"
    script:
        "../scripts/hard_labels.py"
