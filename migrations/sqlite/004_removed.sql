-- A recipient no longer in its campaign's file is never sent again, whatever its status when it
-- left (in flight, failed, unknown), until it comes back to the file. Before this column only
-- pending recipients could be marked, as skipped with this error text.
ALTER TABLE recipients ADD COLUMN removed INTEGER NOT NULL DEFAULT 0;
UPDATE recipients SET removed = 1 WHERE status = 'skipped' AND error = 'removed from the campaign file';
