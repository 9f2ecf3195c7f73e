"""Chart captions (SAIL-Caption2): declarative chart specs, their rendering, and the captions and
QA pairs derived from their values.

- ``charts.spec``: the chart specification (eight chart types) as validated data, its limits, the
  strict parse of a model's JSON, and the JSON schema a model's answer is constrained to;
- ``charts.fonts``: the fonts charts are drawn with, including the CJK font for Chinese, and the
  glyph-coverage check that keeps tofu boxes out of the images;
- ``charts.render``: a spec to a PNG with matplotlib's Agg canvas (no pyplot state);
- ``charts.derive``: caption and QA pairs computed from the spec's numbers, in English or Chinese;
- ``charts.check``: whether a model's rephrasing still agrees with the spec's numbers.

A spec is data only: nothing a model writes is executed, evaluated or parsed as mathtext.
"""
