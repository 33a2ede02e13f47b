"""The toy-city benchmark: generated once per option set, shared by every experiment of a results_dir."""


if TOY:

    rule toycity:
        output:
            directory(DATA),
        params:
            cfg=view("toycity"),
        threads: threads_of("toycity")
        resources:
            **resources_of("toycity"),
        log:
            f"{DATA}.log",
        benchmark:
            f"{DATA}.benchmark.tsv"
        conda:
            "../../environment.yml"
        script:
            "../scripts/toycity.py"
