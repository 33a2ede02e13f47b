"""Step 0: the adversarial warm-up, or the import of an existing warm-up checkpoint
(warmup.checkpoint, e.g. the released one), which is then this rule's input."""


rule warmup:
    input:
        checkpoint=artifact("checkpoint"),
        weights=artifact("weights"),
        checked=artifact("checked"),
        data=DATA.get("data", []),
    output:
        model="{node}/model.pt",
        log="{node}/train.csv",
        record="{node}/record.yaml",
    log:
        "{node}/job.log",
    benchmark:
        "{node}/job.benchmark.tsv"
    wildcard_constraints:
        node=nodes_of("warmup"),
    conda:
        "../../environment.yml"
    threads: threads_of("warmup")
    resources:
        **resources_of("warmup"),
    params:
        step=STUDY.step_of,
        view=STUDY.view_of,
    script:
        "../scripts/step.py"
