"""Training stages 1-3. Each writes its model (the only declared output), a per-iteration
`train.csv` beside it and resume checkpoints in `<stage>/state/` (kept when a job dies, so the
rerun resumes; wiped when the step's params or inputs changed).

One process runs each stage on CPU or one GPU. With `gpu` > 1 (a site profile's set-resources,
or --set-resources stage1:gpu=4) the worker launches
`torchrun --standalone --nproc_per_node=<gpu> -m proda.cli <step> --config-json ...` instead
(DistributedDataParallel); see workflow/scripts/_worker.py."""


rule stage1:
    input:
        warmup=f"{RES}/warmup/model.pt",
        soft=f"{RES}/pseudo/soft_warmup.h5",
        prototypes=f"{RES}/prototypes/warmup.h5",
        data=data_input(),
    output:
        f"{RES}/stage1/model.pt",
    params:
        cfg=view("stage1"),
        state_dir=f"{RES}/stage1/state",
        key=KEYS["stage1"],
    threads: threads_of("stage1")
    resources:
        **resources_of("stage1"),
    log:
        log_of("stage1"),
    benchmark:
        benchmark_of("stage1")
    conda:
        "../../environment.yml"
    script:
        "../scripts/stage1.py"


rule stage2:
    input:
        teacher=f"{RES}/stage1/model.pt",
        labels=f"{RES}/pseudo/hard_stage1.h5",
        data=data_input(),
        **student_init_input("stage2"),
    output:
        f"{RES}/stage2/model.pt",
    params:
        cfg=view("stage2"),
        state_dir=f"{RES}/stage2/state",
        key=KEYS["stage2"],
    threads: threads_of("stage2")
    resources:
        **resources_of("stage2"),
    log:
        log_of("stage2"),
    benchmark:
        benchmark_of("stage2")
    conda:
        "../../environment.yml"
    script:
        "../scripts/distill.py"


rule stage3:
    input:
        teacher=f"{RES}/stage2/model.pt",
        labels=f"{RES}/pseudo/hard_stage2.h5",
        data=data_input(),
        **student_init_input("stage3"),
    output:
        f"{RES}/stage3/model.pt",
    params:
        cfg=view("stage3"),
        state_dir=f"{RES}/stage3/state",
        key=KEYS["stage3"],
    threads: threads_of("stage3")
    resources:
        **resources_of("stage3"),
    log:
        log_of("stage3"),
    benchmark:
        benchmark_of("stage3")
    conda:
        "../../environment.yml"
    script:
        "../scripts/distill.py"
