// What the PostgreSQL JDBC driver (Debian's libpostgresql-jdbc-java) sees of `quotaflow serve`:
// DatabaseMetaData, and one prepared statement executed more than five times so the driver
// switches to a server-side prepared statement (prepareThreshold, default 5) -- the path
// Metabase, Tableau and Looker take. tests/serve.rs runs it as a single-file program:
//
//   java -cp /usr/share/java/postgresql.jar JdbcProbe.java URL USER PASSWORD
//
// It prints one line per fact, `key<TAB>value`.
import java.sql.*;

public class JdbcProbe {
    public static void main(String[] args) throws Exception {
        try (Connection c = DriverManager.getConnection(args[0], args[1], args[2])) {
            DatabaseMetaData md = c.getMetaData();
            System.out.println("product\t" + md.getDatabaseProductName() + " " + md.getDatabaseProductVersion());
            try (ResultSet rs = md.getTables(null, "public", "%", new String[] {"TABLE"})) {
                while (rs.next()) {
                    System.out.println("table\t" + rs.getString("TABLE_NAME") + "\t" + rs.getString("REMARKS"));
                }
            }
            try (ResultSet rs = md.getColumns(null, "public", "attainment", "%")) {
                while (rs.next()) {
                    System.out.println("column\t" + rs.getString("COLUMN_NAME") + "\t" + rs.getString("TYPE_NAME")
                        + "\t" + rs.getString("REMARKS"));
                }
            }
            String q = "SELECT COUNT(*), SUM(closed_won) FROM attainment WHERE level = ? AND period_type = ?";
            try (PreparedStatement ps = c.prepareStatement(q)) {
                for (int i = 1; i <= 7; i++) {
                    ps.setString(1, "company");
                    ps.setString(2, "quarter");
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        boolean server = ps.unwrap(org.postgresql.PGStatement.class).isUseServerPrepare();
                        System.out.println("execution\t" + i + "\t" + server + "\t" + rs.getLong(1) + "\t"
                            + rs.getBigDecimal(2).toPlainString());
                    }
                }
            }
            try (Statement s = c.createStatement();
                 ResultSet rs = s.executeQuery("SELECT period_start FROM attainment LIMIT 1")) {
                rs.next();
                System.out.println("types\t" + rs.getMetaData().getColumnTypeName(1) + "\t" + rs.getObject(1).getClass().getName());
            }
        }
    }
}
