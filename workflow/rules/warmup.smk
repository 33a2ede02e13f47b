"""Step 0: the adversarial warm-up, or the import of an existing warm-up checkpoint
(warmup.checkpoint, e.g. the released one), which is then this rule's input."""


rule warmup:
    input:
        **warmup_input(),
    output:
        f"{RES}/warmup/model.pt",
    params:
        cfg=view("warmup"),
        state_dir=f"{RES}/warmup/state",
        key=KEYS["warmup"],
    threads: threads_of("warmup")
    resources:
        **resources_of("warmup"),
    log:
        log_of("warmup"),
    benchmark:
        benchmark_of("warmup")
    conda:
        "../../environment.yml"
    script:
        "../scripts/warmup.py"
