# Runs Rails' migrator (ActiveRecord::MigrationContext#migrate), which takes
# the advisory lock Migrator#generate_migrator_advisory_lock_id names.
#
#   ruby rails_migrate.rb hold DATABASE_URL   # a migration prints "held",
#                                             # then waits for stdin to end
#   ruby rails_migrate.rb try DATABASE_URL    # prints acquired or refused
#
# Run it with Debian's /usr/bin/ruby, which sees ruby-activerecord and ruby-pg.
require "active_record"
require "tmpdir"

mode, url = ARGV
ActiveRecord::Base.establish_connection(url)
ActiveRecord::Migration.verbose = false
# golang-migrate's tests share the database and its schema_migrations table;
# the table's name does not change Rails' lock key.
ActiveRecord::Base.schema_migrations_table_name = "rails_schema_migrations"
ActiveRecord::Base.internal_metadata_table_name = "rails_internal_metadata"

Dir.mktmpdir do |dir|
  version = (Time.now.to_r * 1_000_000).to_i # a new migration each run
  File.write(File.join(dir, "#{version}_interop_#{mode}.rb"), <<~RUBY)
    class Interop#{mode.capitalize} < ActiveRecord::Migration[6.1]
      def up
        if #{mode == "hold"}
          $stdout.puts "held"
          $stdout.flush
          $stdin.read
        end
      end
    end
  RUBY
  begin
    ActiveRecord::MigrationContext.new(dir, ActiveRecord::SchemaMigration).migrate
    puts "acquired" if mode == "try"
  rescue ActiveRecord::ConcurrentMigrationError
    puts "refused"
  end
end
