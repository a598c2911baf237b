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
    params:
        surface=lambda wc: json.dumps(MATRIX.surfaces[wc.surface].to_dict(), sort_keys=True),
        results_dir=RESULTS,
        allow_missing=ALLOW_MISSING,
    log:
        "logs/aggregate/{surface}.log",
    localrule: True
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/aggregate_surface.py"
