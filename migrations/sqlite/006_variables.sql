-- Each recipient's own values from the campaign file (JSON), and each campaign's columns in file
-- order: reports show them beside the outcome, and `retry` renders the campaign's current message
-- from them. NULL for recipients loaded before this migration.
ALTER TABLE recipients ADD COLUMN variables TEXT;
ALTER TABLE campaigns ADD COLUMN columns TEXT;
