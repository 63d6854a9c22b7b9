"""Reporting: the results as people and programs read them, with no web framework in sight.

* :mod:`~abkit.report.wording` -- numbers and phrases (percent, pp, intervals, p-values);
* :mod:`~abkit.report.verdict` -- the banner: who is winning, how sure, what was decided;
* :mod:`~abkit.report.text` -- ``abkit results`` as a table;
* :mod:`~abkit.report.document` -- the JSON documents of the API and ``--format json``;
* :mod:`~abkit.report.tables` -- the CSV tables of the API and ``--format csv``;
* :mod:`~abkit.report.chart` -- the chart's geometry (the web page draws it as SVG).

Everything here reads :class:`~abkit.services.views.ExperimentResults` and returns plain values;
``abkit/web`` and ``abkit/cli.py`` both use it.
"""
