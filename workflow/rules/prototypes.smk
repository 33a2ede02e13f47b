"""The initial class prototypes (feature centroids of the warm-up model on the target train split)."""


rule prototypes:
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
        node=nodes_of("prototypes"),
    conda:
        "../../environment.yml"
    threads: threads_of("prototypes")
    resources:
        **resources_of("prototypes"),
    params:
        step=STUDY.step_of,
        view=STUDY.view_of,
    script:
        "../scripts/step.py"
