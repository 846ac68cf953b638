"""Paper Table 6: the model's own chat template instead of the generic Q/A template.

Same protocol as Table 3 (image queries): No Context, Image ICL Base, Text ICL xBase, Text ICL
xPatch, with demonstrations and queries written in the chat template (user turn = input,
assistant turn = answer; the delimiter is the last token of the assistant header).

    python -m analyses.table6_template [--quick] [--model ID]
"""

from __future__ import annotations

import taskvec
from analyses._common import (IMAGE_QUERY_COMBOS, bar_figure, experiment_parser, load_model, paper_rows, save_figure,
                              setting_from, store_for, tasks_from, write_table)
from analyses._common import RESULTS


def main(argv=None) -> None:
    args = experiment_parser(__doc__).parse_args(argv)
    model = load_model(args.model, args)
    template = taskvec.chat_template(model.tokenizer)
    print(f"chat template: demo {template.demo!r}, query {template.query!r}, marker {template.marker!r}")
    res = taskvec.transfer_experiment(model, tasks_from(args), IMAGE_QUERY_COMBOS, setting_from(args, template=template),
                                      store=store_for(args, "transfer-chat"))
    wide = paper_rows(res["summary"]).drop(index=["Random", "Image ICL Patch"], errors="ignore")
    print(f"\nTable 6 (chat template) on {model.name}")
    write_table(wide, "table6_template.csv")
    res["summary"].to_csv(RESULTS / "table6_template_long.csv", index=False, float_format="%.4f")  # n and intervals
    save_figure(bar_figure(wide.drop(columns="Avg."), f"Chat template, image queries ({model.name})"),
                "table6_template")


if __name__ == "__main__":
    main()
