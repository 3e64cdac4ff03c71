-- How many touch keys (source, medium, campaign, channel) there are together: a few hundred, not the product of
-- each column's count. Without it the planner expects ~100,000 groups for a year's report, sorts 200,000 credit
-- rows through temporary files and groups them; with it, one hash aggregate in memory (docs/performance.md,
-- "Report at a year's scale"). 0010 is the dashboard's sessions.
CREATE STATISTICS IF NOT EXISTS conversion_credits_keys (ndistinct)
    ON source, medium, campaign, channel FROM conversion_credits;
ANALYZE conversion_credits;
