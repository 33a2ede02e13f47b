"""The initial class prototypes (feature centroids of the warm-up model on the target train split)."""


rule prototypes:
    input:
        checkpoint=f"{RES}/warmup/model.pt",
        data=data_input(),
    output:
        f"{RES}/prototypes/warmup.h5",
    params:
        cfg=view("prototypes"),
        key=KEYS["prototypes"],
    threads: threads_of("prototypes")
    resources:
        **resources_of("prototypes"),
    log:
        log_of("prototypes"),
    benchmark:
        benchmark_of("prototypes")
    conda:
        "../../environment.yml"
    script:
        "../scripts/prototypes.py"
