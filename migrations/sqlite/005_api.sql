-- Which API a campaign was sent to: 'sandbox' for the built-in one, else the base URL. A campaign
-- rehearsed against one is refused against another, so a rehearsal never uses up the real thing.
ALTER TABLE campaigns ADD COLUMN api TEXT;
