# Per surface: tables (CSV/Markdown/LaTeX), figure, seed list; all in the HTML report. A surface
# with failed or missing cells fails the job, listing them, unless allow_missing is set.


rule aggregate:
    input:
        surface_inputs,
    output:
        csv=report(
            f"{RESULTS}/surfaces/{{surface}}/table.csv",
            caption="../report/table.rst",
            category="Tables",
            subcategory="{surface}",
            labels={"surface": "{surface}", "kind": "table (CSV)"},
        ),
        md=f"{RESULTS}/surfaces/{{surface}}/table.md",
        tex=f"{RESULTS}/surfaces/{{surface}}/table.tex",
        png=report(
            f"{RESULTS}/surfaces/{{surface}}/figure.png",
            caption="../report/figure.rst",
            category="Figures",
            subcategory="{surface}",
            labels={"surface": "{surface}", "kind": "figure"},
        ),
        pdf=f"{RESULTS}/surfaces/{{surface}}/figure.pdf",
        seeds=f"{RESULTS}/surfaces/{{surface}}/seeds.json",
    log:
        "logs/aggregate/{surface}.log",
    localrule: True
    conda:
        CONDA_ENV
    params:
        surface=lambda wc: json.dumps(MATRIX.surfaces[wc.surface].to_dict(), sort_keys=True),
        # the folder above surfaces/, from the output path (the linter's advice: no hardcoded prefix)
        results_dir=lambda wc, output: os.path.normpath(os.path.join(os.path.dirname(output.csv), os.pardir, os.pardir)),
        allow_missing=ALLOW_MISSING,
    script:
        "../workflow_scripts/aggregate_surface.py"
